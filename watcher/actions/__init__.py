"""One module per command; each returns a result dataclass and never prints or exits."""
