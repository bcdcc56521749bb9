"""``lifecycled demo``: the whole story against the embedded simulator, in under a minute."""
