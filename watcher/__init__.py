"""watcher: watched folders -> versioned, deduplicated snapshots on FTP, FTPS, SFTP or a local folder."""

__version__ = "0.1.0"
