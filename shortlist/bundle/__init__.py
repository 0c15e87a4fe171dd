"""The versioned artifact bundle the services load: the object, its file format, hot swap, the
bundle set and A/B arms.
"""
