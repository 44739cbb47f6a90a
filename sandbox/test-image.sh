#!/usr/bin/env bash
# Checks a sandbox image the way stigmer runs it: as 1000:1000, every capability dropped,
# no-new-privileges, no network, with stigmer's default limits. The jobs auto mode sends to the
# sandbox must work there: Python 3.11 with a writable venv, Node.js with a writable npm
# prefix, the everyday tools; apt-get must fail with the custom-image message.
# Nothing is downloaded: packages are installed from files made inside the container.
#
# The image's size is printed, and the test fails when it is larger than SANDBOX_MAX_MB.
#
# Usage: sandbox/test-image.sh [IMAGE]   (default: $SANDBOX_BASIC_IMAGE or stigmer-sandbox-basic:local)
# Environment: SANDBOX_MAX_MB  the largest size allowed, in MB (10^6 bytes, as `docker images`
#              counts); default 450 for the basic image (its title label says which it is), no
#              limit for the full one; 0 or empty: no limit. The offline build is 433 MB.
set -euo pipefail

image="${1:-${SANDBOX_BASIC_IMAGE:-stigmer-sandbox-basic:local}}"
docker image inspect "$image" >/dev/null 2>&1 \
  || { echo "sandbox-test: no image $image (make sandbox-build-basic)" >&2; exit 1; }

title="$(docker image inspect --format '{{ index .Config.Labels "org.opencontainers.image.title" }}' "$image")"
if [ -z "${SANDBOX_MAX_MB+set}" ]; then
  case "$title" in stigmer-sandbox-basic) max_mb=450 ;; *) max_mb=0 ;; esac
else
  max_mb="$SANDBOX_MAX_MB"
fi
size_mb=$(( ($(docker image inspect --format '{{ .Size }}' "$image") + 500000) / 1000000 ))
size_rc=0
if [ "${max_mb:-0}" -gt 0 ] && [ "$size_mb" -gt "$max_mb" ]; then
  size_line="  FAIL  size $size_mb MB, more than the $max_mb MB allowed (SANDBOX_MAX_MB)"
  size_rc=1
else
  size_line="  ok    size $size_mb MB${max_mb:+ (at most $max_mb MB)}"
  [ "${max_mb:-0}" -gt 0 ] || size_line="  ok    size $size_mb MB (no limit)"
fi

hardened=(--rm --user 1000:1000 --cap-drop ALL --security-opt no-new-privileges --network none
          --memory 2g --memory-swap 2g --cpus 2 --pids-limit 512 --init)

echo "sandbox-test: $image, run as: docker run ${hardened[*]}"
echo "$size_line"
rc=$size_rc
docker run -i "${hardened[@]}" "$image" bash -s <<'CHECKS' || rc=1
set -u
fails=0
check() {
  local what=$1 out; shift
  if out=$("$@" 2>&1 </dev/null); then
    printf '  ok    %s%s\n' "$what" "${out:+  ($(printf '%s' "$out" | tail -n 1 | cut -c1-70))}"
  else
    printf '  FAIL  %s\n' "$what"; printf '%s\n' "$out" | sed 's/^/        | /' | tail -n 15
    fails=$((fails + 1))
  fi
}
sh() { bash -c "$1"; }

check "runs as uid/gid 1000 (sandbox)" sh '[ "$(id -u):$(id -g) $(id -un)" = "1000:1000 sandbox" ] && echo "$(id)"'
check "home is /home/sandbox" sh '[ "$HOME" = /home/sandbox ] && [ -O "$HOME" ]'
check "working directory /workspace, writable" sh '[ "$PWD" = /workspace ] && touch .w && rm .w && pwd'
check "no capabilities, no-new-privileges" sh 'grep -q "^CapEff:[[:space:]]*0*$" /proc/self/status && grep -q "^NoNewPrivs:[[:space:]]*1" /proc/self/status'
check "no network (--network none)" sh '! curl -fsS -m 3 -o /dev/null http://deb.debian.org/ 2>/dev/null'

check "python3 is 3.11" sh 'python3 --version | grep -E "^Python 3\.11\."'
check "python3 and pip come from the venv" sh '[ "$(command -v python3)" = /opt/venv/bin/python3 ] && pip --version | grep -F "/opt/venv/"'
check "the venv belongs to the sandbox user" sh '[ -O /opt/venv ] && [ -w /opt/venv/lib/python3.11/site-packages ]'
check "preinstalled packages import" python3 -c 'import requests, yaml, dotenv, tabulate, packaging, jinja2, click, setuptools, wheel; print("requests", requests.__version__, "jinja2", jinja2.__version__)'
check "pip install of a local wheel (--no-index)" sh '
  set -e; d=$(mktemp -d); cd "$d"
  python3 - <<"PY"
import base64, hashlib, zipfile
files = {
    "stigmer_probe/__init__.py": "VALUE = 42\n",
    "stigmer_probe-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: stigmer-probe\nVersion: 1.0\n",
    "stigmer_probe-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: stigmer-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
record = []
with zipfile.ZipFile("stigmer_probe-1.0-py3-none-any.whl", "w") as whl:
    for name, text in files.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(data)}")
        whl.writestr(name, data)
    record.append("stigmer_probe-1.0.dist-info/RECORD,,")
    whl.writestr("stigmer_probe-1.0.dist-info/RECORD", "\n".join(record) + "\n")
PY
  pip install --no-index -q ./stigmer_probe-1.0-py3-none-any.whl
  cd / && python3 -c "import stigmer_probe; assert stigmer_probe.VALUE == 42; print(stigmer_probe.__file__)"'
check "pip install of a local source tree (setuptools, offline)" sh '
  set -e; d=$(mktemp -d); mkdir -p "$d/stigmer_src"
  printf "[build-system]\nrequires = [\"setuptools\"]\nbuild-backend = \"setuptools.build_meta\"\n[project]\nname = \"stigmer-src\"\nversion = \"1.0\"\n" > "$d/pyproject.toml"
  echo "OK = True" > "$d/stigmer_src/__init__.py"
  pip install --no-index --no-build-isolation -q "$d"
  cd / && python3 -c "import stigmer_src; assert stigmer_src.OK" && pip show stigmer-src | grep "^Version"'

check "node and npm" sh 'echo "node $(node --version), npm $(npm --version)"'
check "npm prefix is ~/.npm-global, user-owned and writable" sh '
  p=$(npm config get prefix); [ "$p" = /home/sandbox/.npm-global ] && [ -O "$p" ] && [ -w "$p" ] && echo "$p"'
check "npm install -g of a local package (offline)" sh '
  set -e; d=$(mktemp -d)
  printf "{\"name\":\"stigmer-probe\",\"version\":\"1.0.0\",\"bin\":{\"stigmer-probe\":\"cli.js\"}}\n" > "$d/package.json"
  printf "#!/usr/bin/env node\nconsole.log(\"probe ok\")\n" > "$d/cli.js"
  npm install -g --offline --no-audit --no-fund --install-links "$d" >/dev/null
  stigmer-probe'

check "git, curl, jq, make, gcc, g++, tini, ps" sh '
  for c in git curl jq make gcc g++ tini ps unzip xz ssh less; do command -v $c >/dev/null || { echo "missing $c"; exit 1; }; done
  echo "{\"a\":1}" | jq -e .a >/dev/null && git --version'
check "gcc builds and runs a program" sh '
  d=$(mktemp -d) && printf "int main(void){return 0;}\n" > "$d/t.c" && gcc -o "$d/t" "$d/t.c" && "$d/t"'
check "g++ builds and runs a program" sh '
  d=$(mktemp -d) && printf "#include <string>\nint main(){std::string s; return (int)s.size();}\n" > "$d/t.cc" && g++ -o "$d/t" "$d/t.cc" && "$d/t"'
check "pip builds a C extension (Python headers, offline)" sh '
  set -e; d=$(mktemp -d); mkdir -p "$d/src"
  printf "#include <Python.h>\nstatic struct PyModuleDef m = {PyModuleDef_HEAD_INIT, \"stigmer_ext\"};\nPyMODINIT_FUNC PyInit_stigmer_ext(void) { return PyModule_Create(&m); }\n" > "$d/src/ext.c"
  printf "from setuptools import setup, Extension\nsetup(name=\"stigmer-ext\", version=\"1.0\", ext_modules=[Extension(\"stigmer_ext\", [\"src/ext.c\"])])\n" > "$d/setup.py"
  pip install --no-index --no-build-isolation -q "$d"
  cd / && python3 -c "import stigmer_ext; print(stigmer_ext.__file__)"'
check "git commits in /workspace" sh '
  d=$(mktemp -d -p /workspace) && cd "$d" && git init -q && git -c user.name=t -c user.email=t@t commit -q --allow-empty -m t && git log --oneline | wc -l; rm -rf "$d"'

check "apt-get install fails with the custom-image message" sh '
  out=$(apt-get install -y cowsay 2>&1); rc=$?
  [ "$rc" = 100 ] && grep -q "build a custom image FROM" <<<"$out" && grep -q "^    FROM " <<<"$out" && echo "exit $rc"'
check "apt install / apt-get update fail the same way" sh '
  apt install cowsay 2>&1 | grep -q "build a custom image FROM" && apt-get update 2>&1 | grep -q "build a custom image FROM"'
check "sudo explains instead of 'not found'" sh '! sudo true 2>/dev/null && sudo apt-get install x 2>&1 | grep -q "custom image"'
check "read-only apt queries still work" sh 'apt-get --version | head -1'

echo "  $fails failed"
exit $(( fails > 0 ))
CHECKS

# As root (a Dockerfile building FROM the image), apt-get is the real one.
if out=$(docker run --rm --user 0 --network none "$image" apt-get --version 2>&1) && grep -q '^apt ' <<<"$out"; then
  echo "  ok    as root, apt-get is the real apt-get  ($(head -n 1 <<<"$out"))"
else
  echo "  FAIL  as root, apt-get is the real apt-get"; echo "$out" | sed 's/^/        | /'
  rc=1
fi

if [ "$rc" = 0 ]; then echo "sandbox-test: $image passed"; else echo "sandbox-test: $image FAILED" >&2; fi
exit "$rc"
