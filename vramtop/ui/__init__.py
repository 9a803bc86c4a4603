"""The Textual user interface. It is handed a source; it never builds one."""
