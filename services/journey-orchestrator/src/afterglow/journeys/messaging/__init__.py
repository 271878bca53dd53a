"""Customer messaging: templates, consent, quiet hours, frequency caps, signed delivery."""
