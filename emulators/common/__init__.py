"""Pieces both emulators share: throwaway TLS, a threaded HTTPS server, faults and counters."""
