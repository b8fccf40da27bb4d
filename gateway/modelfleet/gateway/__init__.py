"""The ModelFleet gateway: weighted version split, load-aware endpoint choice,
priority shedding and retries in front of a pool's runtime pods.

It never imports torch (nor numpy): an import-linter contract and a test prove it.
"""
