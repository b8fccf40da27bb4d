"""The ModelFleet operator (kopf): InferencePool and InferenceModel resources.

It never imports torch, numpy or the runtime: an import-linter contract proves it.
"""
