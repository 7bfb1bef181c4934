"""Local HTTPS emulators of Microsoft Graph and the 3CX V20 XAPI (for tests and demos)."""
