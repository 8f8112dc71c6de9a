"""The online channel: sellable availability (ATP), its live stream, outbound webhooks, endless aisle,
inbound shop orders."""
