"""Contact with customers at delivery: consent, complaints and routes (docs/contact.md)."""
