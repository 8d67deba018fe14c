"""Link repair: the milter's pass over a message's links, at end of message and before signing.

The pipeline, in the order one message meets it (docs/links.md has the rules):

1. ``settings`` reads ``[links]`` into a :class:`~.rewrite.LinkPolicy`; a
   stream may override only its mode (``LINK_MODES``).
2. ``rewrite`` is the entry point, :func:`~.rewrite.rewrite_message`: it never
   raises and returns a body only when the message must be replaced.
3. ``prescan`` proves on the raw bytes that most messages have nothing to
   change, so they are never parsed.
4. ``mime_tree`` locates the leaf parts on the raw body without re-serialising
   anything (or raises ``BrokenMime``, and the message passes unchanged).
5. ``mime_text`` decodes one text part and encodes it back the same way.
6. ``scan`` finds the links in a part's decoded text (HTML attributes, bare
   URLs, Listmonk's unrendered ``{{ TrackLink "…" }}`` form).
7. ``url_repair`` classifies one link and edits it: strips the marker,
   turns an ``&``-first query's ``&`` into ``?``.
8. ``metrics`` counts and ``log`` logs the outcome; neither ever sees a
   subscriber's query values.
"""
