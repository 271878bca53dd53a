from __future__ import annotations

from afterglow.kit.settings import ServiceSettings

# Where each service listens under `make dev` (their default ports).
DEV_URLS = {
    "ingest": "http://127.0.0.1:8001",
    "journeys": "http://127.0.0.1:8002",
    "feedback": "http://127.0.0.1:8003",
    "loyalty": "http://127.0.0.1:8004",
    "referrals": "http://127.0.0.1:8005",
}


class ConsoleSettings(ServiceSettings):
    # "name=url,..." of the services the console calls (the launcher sets it for the
    # ports it picked); a service not named is looked for at its `make dev` port.
    service_urls: str = ""
    # A session lasts this long from sign-in, whatever the activity: the API key behind
    # it may be revoked meanwhile, and an 8 h working day is the common default.
    console_session_ttl_s: int = 8 * 3600

    def urls(self) -> dict[str, str]:
        named = dict(part.split("=", 1) for part in self.service_urls.split(",") if "=" in part)
        given = {k.strip(): v.strip().rstrip("/") for k, v in named.items()}
        # Only the services it calls (the launcher's list names the console too).
        return {name: given.get(name, url) for name, url in DEV_URLS.items()}

    @property
    def secure_cookies(self) -> bool:
        """Cookies are Secure whenever the console is served over HTTPS, which is
        everywhere but a developer's machine (http://127.0.0.1 under make dev)."""
        return self.public_base_url.lower().startswith("https://")
