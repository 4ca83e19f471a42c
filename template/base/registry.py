#!/usr/bin/env python3
"""Ask an image registry for the digest of a reference, as base/linked.py needs it.

    python3 base/registry.py REF   print REF's digest (exit 0), or say it is absent (exit 1)

`make lock` pins every FROM of base/Dockerfile by the digest it finds here.

Only a clear 404 means absent; any other answer (401, 429, 5xx, no answer) is an
error (exit 2), so a publish never takes "could not ask" for "not there".
Credentials come from Podman's or Docker's auth file or credential helper.
Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request

KINDS = ("oci.image.index.v1", "docker.distribution.manifest.list.v2", "oci.image.manifest.v1")
ACCEPT = ", ".join(f"application/vnd.{kind}+json" for kind in (*KINDS, "docker.distribution.manifest.v2"))
FROM_RE = re.compile(r"^FROM\s+(?P<image>[^\s@]+?)(?P<digest>@sha256:[0-9a-f]{64})?(?P<rest>\s.*)?$", re.IGNORECASE)
PATH_RE = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$")


class RegistryError(Exception):
    """The registry could not say whether it has an image: one line, no traceback."""


def split_reference(ref: str) -> tuple[str, str, str]:
    """(registry host, repository, tag or digest) of an image reference, as Docker reads it."""
    name, _, digest = ref.partition("@")
    first, _, rest = name.partition("/")
    host, path = (
        (first, rest) if rest and ("." in first or ":" in first or first == "localhost") else ("docker.io", name)
    )
    path, _, tag = path.partition(":") if ":" in path.rsplit("/", 1)[-1] else (path, "", "latest")
    path = "library/" + path if host == "docker.io" and "/" not in path else path
    if not PATH_RE.match(path):
        raise RegistryError(f"{ref!r} is not an image reference")
    return host, path, digest or tag


def credentials(host: str) -> tuple[str, str] | None:
    """(user, secret) for ``host`` from Podman's or Docker's auth file or credential helper."""
    keys = [host, "https://index.docker.io/v1/"] if host == "docker.io" else [host, f"https://{host}"]
    for path in (
        os.environ.get("REGISTRY_AUTH_FILE", ""),
        os.path.join(os.environ.get("XDG_RUNTIME_DIR", "/nonexistent"), "containers/auth.json"),
        os.path.join(os.environ.get("DOCKER_CONFIG", os.path.expanduser("~/.docker")), "config.json"),
    ):
        try:
            with open(path, encoding="utf-8") as handle:
                config = json.load(handle)
        except (OSError, ValueError):
            continue
        for key in keys:
            auth = config.get("auths", {}).get(key, {}).get("auth")
            if auth:
                user, _, secret = base64.b64decode(auth).decode().partition(":")
                return user, secret
            helper = config.get("credHelpers", {}).get(key) or config.get("credsStore")
            if helper and re.match(r"^[\w.-]+$", helper):
                try:
                    got = subprocess.run(
                        [f"docker-credential-{helper}", "get"],
                        check=False,
                        input=key,
                        capture_output=True,
                        text=True,
                        timeout=20,
                    )
                    if got.returncode == 0:
                        data = json.loads(got.stdout)
                        return data["Username"], data["Secret"]
                except (OSError, ValueError, KeyError, subprocess.TimeoutExpired):
                    pass
    return None


def manifest_digest(ref: str) -> str | None:
    """The registry's digest for ``ref``, None only on a clear 404; any other failure raises."""
    host, path, tag = split_reference(ref)
    api = "registry-1.docker.io" if host == "docker.io" else host
    local = api.split(":")[0] in ("localhost", "127.0.0.1", "[::1]")
    url = f"{'http' if local else 'https'}://{api}/v2/{path}/manifests/{tag}"
    creds = credentials(host)
    basic = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode() if creds else ""
    headers = {"Accept": ACCEPT}
    for attempt in range(2):
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD", headers=headers), timeout=15) as got:
                digest = got.headers.get("Docker-Content-Digest", "")
                if not re.match(r"^sha256:[0-9a-f]{64}$", digest):
                    raise RegistryError(f"{api}: answered {ref} without a sha256 digest")
                return str(digest)
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            challenge = exc.headers.get("WWW-Authenticate", "") if exc.code == 401 else ""
            if attempt or not challenge:
                raise RegistryError(f"{api}: {ref}: HTTP {exc.code} {exc.reason}") from None
            if challenge.lower().startswith("basic") and basic:
                headers["Authorization"] = f"Basic {basic}"
            else:
                headers["Authorization"] = f"Bearer {token(api, ref, challenge, basic, local)}"
        except (urllib.error.URLError, OSError) as exc:
            raise RegistryError(f"{api}: {ref}: {getattr(exc, 'reason', exc)}") from None
    raise RegistryError(f"{api}: {ref}: refused the credentials")


def token(api: str, ref: str, challenge: str, basic: str, local: bool) -> str:
    """A bearer token from the realm a 401's challenge names (https only, but for a local registry)."""
    params = dict(re.findall(r'(\w+)="([^"]*)"', challenge))
    realm = params.get("realm", "")
    if not challenge.lower().startswith("bearer") or not realm.startswith("http" if local else "https://"):
        raise RegistryError(f"{api}: {ref}: HTTP 401 with a scheme this tool cannot use")
    query = urllib.parse.urlencode({k: v for k, v in params.items() if k in ("service", "scope")})
    request = urllib.request.Request(f"{realm}?{query}", headers={"Authorization": f"Basic {basic}"} if basic else {})
    try:
        with urllib.request.urlopen(request, timeout=15) as got:
            body = json.loads(got.read(1 << 20))
            return str(body.get("token") or body["access_token"])
    except (urllib.error.URLError, ValueError, KeyError, OSError) as exc:
        raise RegistryError(f"{api}: {ref}: no token ({exc})") from None


def pin_digests(text: str) -> tuple[str, list[str]]:
    """A Dockerfile's text with each FROM pinned by its tag's current digest, and warnings for
    the ones the registry could not answer (they keep the digest they had, if any)."""
    lines, warnings = text.splitlines(keepends=True), []
    for index, line in enumerate(lines):
        m = FROM_RE.match(line.rstrip("\r\n"))
        if not m or "$" in m["image"] or (m["digest"] and ":" not in m["image"].rsplit("/", 1)[-1]):
            continue  # an argument, or pinned by digest alone: no tag to follow
        digest = m["digest"] or ""
        try:
            found = manifest_digest(m["image"])
            if found is None:
                raise RegistryError(f"{m['image']}: not found in its registry")
            digest = "@" + found
        except RegistryError as exc:
            warnings.append(f"digest not resolved ({exc}); kept {'its digest' if digest else 'no digest'}")
        ending = line[len(line.rstrip("\r\n")) :]
        lines[index] = f"FROM {m['image']}{digest}{m['rest'] or ''}{ending}"
    return "".join(lines), warnings


def main(argv: list[str] | None = None) -> int:
    """Print REF's digest: exit 0 if the registry has it, 1 if clearly not, 2 if it cannot say."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: registry.py REF", file=sys.stderr)
        return 2
    try:
        digest = manifest_digest(args[0])
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(digest or f"{args[0]} is not in the registry")
    return 0 if digest else 1


if __name__ == "__main__":
    raise SystemExit(main())
