// The evaluated preprocessing in the browser: PIL's resize (the antialiased separable filter torchvision
// applies to PIL images, 8-bit fixed point, horizontal pass then vertical), torchvision's centre crop, then
// (pixel / 255 - mean) / std into a (1, 3, S, S) float32 tensor.
const PRECISION_BITS = 22;
const FILTERS = {
  bilinear: { support: 1, f: (x) => { x = Math.abs(x); return x < 1 ? 1 - x : 0; } },
  bicubic: { support: 2, f: (x) => {
    const a = -0.5; x = Math.abs(x);
    if (x < 1) return ((a + 2) * x - (a + 3)) * x * x + 1;
    if (x < 2) return (((x - 5) * x + 8) * x - 4) * a;
    return 0;
  } },
};

function coefficients(inSize, outSize, filter) {
  const scale = inSize / outSize, filterscale = Math.max(scale, 1);
  const support = filter.support * filterscale, ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2), kk = new Int32Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const xmin = Math.max(0, Math.trunc(center - support + 0.5));
    const xmax = Math.min(inSize, Math.trunc(center + support + 0.5)) - xmin;
    const w = new Float64Array(xmax);
    let ww = 0;
    for (let x = 0; x < xmax; x++) { w[x] = filter.f((x + xmin - center + 0.5) / filterscale); ww += w[x]; }
    for (let x = 0; x < xmax; x++) {
      const v = ww !== 0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = Math.trunc(v < 0 ? -0.5 + v * (1 << PRECISION_BITS) : 0.5 + v * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, kk, ksize };
}

function clip8(ss) { return Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS)))); }

// One pass along x (horizontal) or y of an RGB uint8 image {w, h, data}.
function pass(img, outSize, filter, horizontal) {
  const inSize = horizontal ? img.w : img.h;
  const { bounds, kk, ksize } = coefficients(inSize, outSize, filter);
  const w = horizontal ? outSize : img.w, h = horizontal ? img.h : outSize;
  const out = new Uint8ClampedArray(w * h * 3);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const o = horizontal ? x : y, xmin = bounds[o * 2], n = bounds[o * 2 + 1];
      for (let c = 0; c < 3; c++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let k = 0; k < n; k++) {
          const src = horizontal ? (y * img.w + xmin + k) : ((xmin + k) * img.w + x);
          ss += img.data[src * 3 + c] * kk[o * ksize + k];
        }
        out[(y * w + x) * 3 + c] = clip8(ss);
      }
    }
  }
  return { w, h, data: out };
}

function resizeNearest(img, w, h) {
  const out = new Uint8ClampedArray(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    const sx = Math.min(img.w - 1, Math.floor((x + 0.5) * img.w / w));
    const sy = Math.min(img.h - 1, Math.floor((y + 0.5) * img.h / h));
    for (let c = 0; c < 3; c++) out[(y * w + x) * 3 + c] = img.data[(sy * img.w + sx) * 3 + c];
  }
  return { w, h, data: out };
}

function resize(img, w, h, interpolation) {
  if (interpolation === 'nearest') return resizeNearest(img, w, h);
  const filter = FILTERS[interpolation];
  if (w !== img.w) img = pass(img, w, filter, true);
  if (h !== img.h) img = pass(img, h, filter, false);
  return img;
}

// trainer decodes a JPEG whose shorter side is over 2x data_config.decode_min_side at 1/2, 1/4 or 1/8 of
// its size (libjpeg's DCT scaling, PIL's draft); the page averages blocks of the same factor instead: close,
// not bit-exact, and both are then downscaled further by the antialiased resize.
function draftFactor(w, h, prep) {
  const scale = 2 * prep.resize / Math.min(w, h);
  if (scale >= 1) return 1;
  const s = Math.min(Math.floor(w / Math.max(1, Math.round(w * scale))), Math.floor(h / Math.max(1, Math.round(h * scale))));
  return [8, 4, 2, 1].find((f) => s >= f);
}

function boxReduce(img, f) {
  const w = Math.ceil(img.w / f), h = Math.ceil(img.h / f), out = new Uint8ClampedArray(w * h * 3);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let c = 0; c < 3; c++) {
    let sum = 0, n = 0;
    for (let yy = y * f; yy < Math.min(img.h, y * f + f); yy++) for (let xx = x * f; xx < Math.min(img.w, x * f + f); xx++) {
      sum += img.data[(yy * img.w + xx) * 3 + c]; n++;
    }
    out[(y * w + x) * 3 + c] = Math.round(sum / n);
  }
  return { w, h, data: out };
}

function roundHalfEven(x) {  // Python's round(), which torchvision's centre crop uses
  const r = Math.round(x);
  return Math.abs(x % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

// RGBA ImageData (upright, full size) -> Float32Array (3 * S * S) as the data config says.
function preprocess(imageData, prep, jpeg) {
  const n = imageData.width * imageData.height, rgb = new Uint8ClampedArray(n * 3);
  for (let i = 0; i < n; i++) for (let c = 0; c < 3; c++) rgb[i * 3 + c] = imageData.data[i * 4 + c];
  let img = { w: imageData.width, h: imageData.height, data: rgb };
  const factor = jpeg ? draftFactor(img.w, img.h, prep) : 1;
  if (factor > 1) img = boxReduce(img, factor);
  const r = prep.resize;
  let w = r, h = r;
  if (prep.crop_mode === 'center') {  // torchvision: shorter side to r, longer side truncated
    if (img.w <= img.h) h = Math.trunc(r * img.h / img.w); else w = Math.trunc(r * img.w / img.h);
  }
  img = resize(img, w, h, prep.interpolation);
  const s = prep.size, top = roundHalfEven((img.h - s) / 2), left = roundHalfEven((img.w - s) / 2);
  const out = new Float32Array(3 * s * s);
  for (let c = 0; c < 3; c++) for (let y = 0; y < s; y++) for (let x = 0; x < s; x++) {
    const v = img.data[((y + top) * img.w + x + left) * 3 + c];
    out[c * s * s + y * s + x] = (v / 255 - prep.mean[c]) / prep.std[c];
  }
  return out;
}
