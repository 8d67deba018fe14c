"""A text/plain part for HTML-only mail: :mod:`.render` turns HTML into text, :mod:`.add` puts it in the message."""
