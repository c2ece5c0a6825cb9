#!/usr/bin/env bash
# Opens the built documentation site in headless Chromium and fails unless
# the pages a reader lands on are really there: navigation, search box and a
# reference signature rendered by mkdocstrings; both served over HTTP and
# opened straight from disk (file://, as the README tells readers to), where
# every navigation link must lead to a page, not to a directory listing.  Screenshots of the home page
# and of one reference page go to $SHOTS (default: site/_check/, which is
# not committed) for a human to look at.
#
# Usage: bash docs/check.sh        (from anywhere; `make docs-check` runs it)
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
SITE=$ROOT/site
SHOTS=${SHOTS:-$SITE/_check}
MKDOCS=${MKDOCS:-$ROOT/.venv/bin/mkdocs}
PYTHON=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
[ -x "$MKDOCS" ] || MKDOCS=mkdocs

fail() { echo "docs-check: FAIL: $*" >&2; exit 1; }
say() { echo "docs-check: $*"; }

# 1. The site, built if it is missing or older than its sources.
newest_source=$(find docs mkdocs.yml aiorcu -newer "$SITE/index.html" -type f \
    -not -path '*/__pycache__/*' 2>/dev/null | head -1 || true)
if [ ! -f "$SITE/index.html" ] || [ -n "$newest_source" ]; then
    say "building the site"
    "$MKDOCS" build --strict --quiet
fi

# 2. Chromium: Debian's package, installed when missing.
find_chromium() {
    for name in chromium chromium-browser google-chrome; do
        if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
    done
    return 1
}
if ! CHROMIUM=$(find_chromium); then
    say "installing chromium (apt-get)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" apt-get install -y chromium >/dev/null 2>&1 || {
        "${SUDO[@]}" apt-get update >/dev/null
        "${SUDO[@]}" DEBIAN_FRONTEND=noninteractive apt-get install -y chromium >/dev/null
    }
    CHROMIUM=$(find_chromium) || fail "chromium is not installed and could not be installed"
fi

# 3. Serve site/ on a free loopback port.
PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
PROFILE=$(mktemp -d)
SERVER_PID=
cleanup() {
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$PROFILE"
}
trap cleanup EXIT
"$PYTHON" -m http.server "$PORT" --bind 127.0.0.1 --directory "$SITE" >/dev/null 2>&1 &
SERVER_PID=$!
BASE=http://127.0.0.1:$PORT
for _ in $(seq 50); do
    if "$PYTHON" -c "import urllib.request; urllib.request.urlopen('$BASE/', timeout=1)" 2>/dev/null; then
        break
    fi
    sleep 0.1
done

chrome() {
    timeout 90 "$CHROMIUM" --headless --no-sandbox --disable-gpu --disable-quic \
        --no-first-run --disable-background-networking --disable-component-update \
        --disable-sync --disable-dev-shm-usage --user-data-dir="$PROFILE" \
        --window-size=1280,900 --virtual-time-budget=3000 "$@" 2>/dev/null
}

mkdir -p "$SHOTS"
HOME_URL=$BASE/
REF_URL=$BASE/reference/domain.html

# 4. Screenshots, for people.
chrome --screenshot="$SHOTS/home.png" "$HOME_URL" >/dev/null || fail "screenshot of $HOME_URL"
chrome --screenshot="$SHOTS/reference.png" "$REF_URL" >/dev/null || fail "screenshot of $REF_URL"
for shot in home reference; do
    [ -s "$SHOTS/$shot.png" ] || fail "no screenshot $SHOTS/$shot.png"
done

# 5. The rendered DOM, for the checks.
chrome --dump-dom "$HOME_URL" >"$SHOTS/home.html" || fail "could not load $HOME_URL"
chrome --dump-dom "$REF_URL" >"$SHOTS/reference.html" || fail "could not load $REF_URL"

"$PYTHON" - "$SHOTS/home.html" "$SHOTS/reference.html" <<'EOF' || fail "rendered pages are incomplete"
import re
import sys
from html.parser import HTMLParser


class Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.classes: set[str] = set()
        self.ids: set[str] = set()
        self.inputs: list[dict[str, str]] = []
        self.nav_links = 0
        self._nav_depth = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = {k: v or "" for k, v in attrs}
        self.classes.update(a.get("class", "").split())
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "input":
            self.inputs.append(a)
        if tag == "nav" and "md-nav--primary" in a.get("class", ""):
            self._nav_depth = 1
        elif tag == "nav" and self._nav_depth:
            self._nav_depth += 1
        if tag == "a" and self._nav_depth and "md-nav__link" in a.get("class", ""):
            self.nav_links += 1

    def handle_endtag(self, tag):
        if tag == "nav" and self._nav_depth:
            self._nav_depth -= 1

    def handle_data(self, data):
        self.text.append(data)


def load(path: str) -> Page:
    page = Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    return page


home, ref = load(sys.argv[1]), load(sys.argv[2])
problems = []
for name, page in (("home", home), ("reference", ref)):
    if "md-nav--primary" not in page.classes or page.nav_links < 5:
        problems.append(f"{name}: primary navigation missing ({page.nav_links} links)")
    if not any(i.get("name") == "query" or "md-search__input" in i.get("class", "")
               for i in page.inputs):
        problems.append(f"{name}: search box missing")
text = re.sub(r"\s+", "", "".join(ref.text))
if "doc-signature" not in ref.classes:
    problems.append("reference: no mkdocstrings signature (class doc-signature)")
if "synchronize_blocking(" not in text or "aiorcu.Domain.synchronize_blocking" not in ref.ids:
    problems.append("reference: Domain.synchronize_blocking is not rendered")
if "aiorcu" not in "".join(home.text):
    problems.append("home: page text missing")
if problems:
    print("\n".join(problems), file=sys.stderr)
    sys.exit(1)
print(f"navigation ({home.nav_links} links), search box and signatures present")
EOF

# 6. From disk: the home page's links are files, and one of them renders.
chrome --dump-dom "file://$SITE/index.html" >"$SHOTS/home-file.html" ||
    fail "could not open file://$SITE/index.html"
"$PYTHON" - "$SHOTS/home-file.html" "$SITE" <<'EOF' || fail "the site does not work from disk"
import re
import sys
from pathlib import Path

html = Path(sys.argv[1]).read_text(encoding="utf-8")
site = Path(sys.argv[2])
links = set(re.findall(r'class="md-nav__link[^"]*"[^>]*href="([^"#]+)"', html))
links |= set(re.findall(r'href="([^"#]+)"[^>]*class="md-nav__link', html))
local = {link for link in links if not link.startswith(("http:", "https:", "mailto:"))}
if len(local) < 5:
    sys.exit(f"only {len(local)} navigation links found")
bad = sorted(link for link in local if not (site / link).is_file())
if bad:
    sys.exit(f"navigation links that are not files (a browser shows a listing): {bad[:5]}")
print(f"{len(local)} navigation links, each a file")
EOF
chrome --dump-dom "file://$SITE/reference/domain.html" >"$SHOTS/reference-file.html" ||
    fail "could not open the reference page from disk"
grep -q "doc-signature" "$SHOTS/reference-file.html" ||
    fail "the reference page opened from disk has no rendered signature"
say "ok; screenshots in $SHOTS"
