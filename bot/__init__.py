"""Chinwag: chat with an open-source language model where people already are.

The core package. It never imports torch or a platform library at module level, so that
`import bot` stays fast and works in processes that only run adapters or tests.
"""
