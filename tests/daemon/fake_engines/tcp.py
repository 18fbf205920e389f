raise ImportError("an engine under construction that does not import")
