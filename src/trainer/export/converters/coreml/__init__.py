"""The `coreml` row: conversion (convert.py), the deployment target (target.py), structural checks
(spec.py), accuracy gates (gates.py) and reference executors that run Core ML models on Linux (executor/
for ML Programs, neuralnetwork_executor.py for NeuralNetwork specs)."""
