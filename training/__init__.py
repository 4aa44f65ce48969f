"""Training of the default model pack (optional 'train' extra; needs torch)."""
