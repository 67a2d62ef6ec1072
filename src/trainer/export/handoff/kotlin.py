"""Classifier.kt: the LiteRT Interpreter on an Android photo, decoded and resized as the evaluation did.

The evaluation decoded JPEGs at reduced scale (shorter side kept at least `decode_min_side`, twice the resize
size) and resized with PIL's antialiasing filter. Android has no antialiased resize, so Classifier.kt decodes
with the same power-of-two subsampling (`inSampleSize` / `setTargetSampleSize`, which also keeps a 50 MP photo
from taking 200 MB), halves with a bilinear filter while the target is under half the size (each halving
averages 2x2 pixels, a box filter) and takes the last step bilinear. The labels come from labels.txt at run
time, so no class name is written into the code.
"""

from __future__ import annotations

from pathlib import Path

from trainer.data.data_config import DataConfig
from trainer.export.handoff.escape import kotlin_string
from trainer.export.handoff.names import (
    EXIFINTERFACE_DEPENDENCY,
    KOTLIN_NAME,
    KOTLIN_PACKAGE,
    LABELS_NAME,
    LITERT_DEPENDENCY,
)
from trainer.utils.files import write_text

# BitmapFactory ignores EXIF orientation, so below API 28 it is read with ExifInterface and applied with a
# Matrix (the transforms Glide's TransformationUtils uses). ImageDecoder applies it itself; its default
# allocator may give a HARDWARE bitmap, whose pixels cannot be read, so it decodes to software memory.
UPRIGHT = """    companion object {
        /** The shorter side the photo is decoded down to at least, as the evaluation decoded JPEGs. */
        const val DECODE_MIN_SIDE = %(min_side)d

        /** The largest power of two that keeps [shorter] / it at least [DECODE_MIN_SIDE]. */
        fun sampleSize(shorter: Int): Int {
            var sample = 1
            while (shorter / (sample * 2) >= DECODE_MIN_SIDE) sample *= 2
            return sample
        }

        /** The photo at [uri]: upright (its EXIF orientation applied), subsampled, in software memory. */
        fun uprightBitmap(resolver: ContentResolver, uri: Uri): Bitmap {
            if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.P) {
                val source = ImageDecoder.createSource(resolver, uri)
                return ImageDecoder.decodeBitmap(source) { decoder, info, _ ->
                    decoder.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
                    decoder.setTargetSampleSize(sampleSize(minOf(info.size.width, info.size.height)))
                }
            }
            val bounds = BitmapFactory.Options().apply { inJustDecodeBounds = true }
            resolver.openInputStream(uri).use { BitmapFactory.decodeStream(it, null, bounds) }
            val options = BitmapFactory.Options().apply {
                inSampleSize = sampleSize(minOf(bounds.outWidth, bounds.outHeight))
            }
            val bitmap = resolver.openInputStream(uri).use { BitmapFactory.decodeStream(it, null, options) }
                ?: throw IOException("cannot decode $uri")
            val orientation = resolver.openInputStream(uri).use {
                ExifInterface(requireNotNull(it) { "cannot open $uri" })
                    .getAttributeInt(ExifInterface.TAG_ORIENTATION, ExifInterface.ORIENTATION_NORMAL)
            }
            val matrix = Matrix()
            when (orientation) {
                ExifInterface.ORIENTATION_FLIP_HORIZONTAL -> matrix.setScale(-1f, 1f)
                ExifInterface.ORIENTATION_ROTATE_180 -> matrix.setRotate(180f)
                ExifInterface.ORIENTATION_FLIP_VERTICAL -> matrix.setScale(1f, -1f)
                ExifInterface.ORIENTATION_TRANSPOSE -> matrix.apply { setRotate(90f); postScale(-1f, 1f) }
                ExifInterface.ORIENTATION_ROTATE_90 -> matrix.setRotate(90f)
                ExifInterface.ORIENTATION_TRANSVERSE -> matrix.apply { setRotate(-90f); postScale(-1f, 1f) }
                ExifInterface.ORIENTATION_ROTATE_270 -> matrix.setRotate(-90f)
            }
            if (matrix.isIdentity) return bitmap
            return Bitmap.createBitmap(bitmap, 0, 0, bitmap.width, bitmap.height, matrix, true)
        }

        /** The model file mapped into memory; the mapping outlives the stream and descriptor, both closed. */
        fun mapAsset(context: Context, name: String): MappedByteBuffer =
            context.assets.openFd(name).use { fd ->
                FileInputStream(fd.fileDescriptor).use { stream ->
                    stream.channel.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                }
            }
    }"""


def _kotlin_target(prep: DataConfig) -> str:
    """Kotlin that sets (width, height), the size the measured eval transform resized `bitmap` to."""
    side = prep.resize_size
    if prep.crop_mode == "squash":
        return f"        val (width, height) = {side} to {side}"
    return f"""        // Shorter side to {side} px, longer side scaled alike, truncated (as timm's Resize)
        val short = minOf(bitmap.width, bitmap.height)
        val long = (maxOf(bitmap.width, bitmap.height).toLong() * {side} / short).toInt()
        val (width, height) = if (bitmap.width > bitmap.height) long to {side} else {side} to long"""


def _kotlin_resize(prep: DataConfig) -> str:
    """The body of Classifier.resize: nearest in one step, else box halvings then a bilinear step."""
    if prep.interpolation == "nearest":
        step = "return Bitmap.createScaledBitmap(bitmap, width, height, false)"
        return f"{_kotlin_target(prep)}\n        {step}"
    return f"""{_kotlin_target(prep)}
        // PIL's {prep.interpolation} antialiases when it shrinks; a bilinear halving averages 2x2 pixels
        // (a box filter), so halve while the target is under half the size, then take the last step
        // bilinear.
        var scaled = bitmap
        while (scaled.width >= 2 * width && scaled.height >= 2 * height) {{
            scaled = Bitmap.createScaledBitmap(scaled, scaled.width / 2, scaled.height / 2, true)
        }}
        return Bitmap.createScaledBitmap(scaled, width, height, true)"""


def kotlin_classifier(model: str, prep: DataConfig) -> str:
    """Classifier.kt: classifies an upright Android Bitmap with the LiteRT Interpreter and the measured
    preprocessing: the eval resize and centre crop, then raw RGB 0-255 floats in NHWC order (the model
    normalizes them itself)."""
    size = prep.size
    return f"""// {KOTLIN_NAME}: generated by trainer for {model}. Kotlin 1.3+, minSdk 21.
// Put {model} and {LABELS_NAME} into app/src/main/assets, move this file to your package (or change the
// line below) and add to the app's build.gradle.kts:
//     implementation("{LITERT_DEPENDENCY}")
//     implementation("{EXIFINTERFACE_DEPENDENCY}")  // EXIF orientation below API 28
// model_fp16.tflite and model_int8.tflite, where exported, take the same input: pass their name.
package {KOTLIN_PACKAGE}

import android.content.ContentResolver
import android.content.Context
import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.graphics.Matrix
import android.net.Uri
import android.os.Build
import androidx.exifinterface.media.ExifInterface
import java.io.FileInputStream
import java.io.IOException
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import kotlin.math.exp
import kotlin.math.round
import org.tensorflow.lite.Interpreter

/**
 * Classifies photos as they were measured at export:
 * {prep.describe_geometry()},
 * then raw RGB values 0-255 as floats. Do NOT normalize them: the model computes
 * (pixel / 255 - mean) / std itself. The val images were upright: classify(uri) applies the photo's
 * EXIF orientation; a bitmap passed to classify(bitmap) must be upright already.
 * Thread-safe: calls share one Interpreter, one at a time. Keeps only the application context.
 */
class Classifier(
    context: Context,
    modelAsset: String = {kotlin_string(model)},
    threads: Int = 4
) : AutoCloseable {{
    data class Prediction(val label: String, val confidence: Float)

    private val appContext: Context = context.applicationContext
    private val labels: List<String> =
        appContext.assets.open("{LABELS_NAME}").bufferedReader().use {{ reader ->
            reader.readLines().filter {{ it.isNotBlank() }}
        }}
    private val interpreter =
        Interpreter(mapAsset(appContext, modelAsset), Interpreter.Options().setNumThreads(threads))

    /** The photo at a content [uri], decoded upright and subsampled: see [classify]. */
    fun classify(uri: Uri, topK: Int = 3): List<Prediction> =
        classify(uprightBitmap(appContext.contentResolver, uri), topK)

    /** The `topK` most likely classes, best first. Runs synchronously: call it off the main thread. */
    fun classify(bitmap: Bitmap, topK: Int = 3): List<Prediction> {{
        val input = pixels(centerCrop(resize(argb8888(bitmap))))
        val logits = Array(1) {{ FloatArray(labels.size) }}
        synchronized(interpreter) {{ interpreter.run(input, logits) }}
        val top = logits[0].fold(Float.NEGATIVE_INFINITY) {{ a, b -> maxOf(a, b) }}
        val weights = logits[0].map {{ exp(it - top) }}
        val total = weights.sum()
        return weights.indices.sortedByDescending {{ weights[it] }}.take(topK)
            .map {{ Prediction(labels[it], weights[it] / total) }}
    }}

    override fun close() = synchronized(interpreter) {{ interpreter.close() }}

    /** getPixels throws on HARDWARE bitmaps (ImageDecoder's default); other configs are copied alike. */
    private fun argb8888(bitmap: Bitmap): Bitmap =
        if (bitmap.config == Bitmap.Config.ARGB_8888) bitmap else bitmap.copy(Bitmap.Config.ARGB_8888, false)

    private fun resize(bitmap: Bitmap): Bitmap {{
{_kotlin_resize(prep)}
    }}

    /** The centre {size}x{size} pixels; offsets rounded half to even, as torchvision's center_crop. */
    private fun centerCrop(bitmap: Bitmap): Bitmap {{
        val left = round((bitmap.width - {size}) / 2.0).toInt()
        val top = round((bitmap.height - {size}) / 2.0).toInt()
        return Bitmap.createBitmap(bitmap, left, top, {size}, {size})
    }}

    /** float32 NHWC (1, {size}, {size}, 3): raw R, G, B values 0-255; the model normalizes them. */
    private fun pixels(bitmap: Bitmap): ByteBuffer {{
        val argb = IntArray({size} * {size})
        bitmap.getPixels(argb, 0, {size}, 0, 0, {size}, {size})
        val buffer = ByteBuffer.allocateDirect(4 * 3 * argb.size).order(ByteOrder.nativeOrder())
        for (pixel in argb) {{
            buffer.putFloat(((pixel shr 16) and 0xFF).toFloat())
            buffer.putFloat(((pixel shr 8) and 0xFF).toFloat())
            buffer.putFloat((pixel and 0xFF).toFloat())
        }}
        buffer.rewind()
        return buffer
    }}

{UPRIGHT % {"min_side": prep.decode_min_side}}
}}
"""


def write_kotlin(out_dir: Path, model: str, prep: DataConfig) -> str:
    write_text(out_dir / KOTLIN_NAME, kotlin_classifier(model, prep))
    return KOTLIN_NAME
