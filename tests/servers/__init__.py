"""Helpers that start real throwaway servers for the tests (MariaDB, S3, HTTP)."""
