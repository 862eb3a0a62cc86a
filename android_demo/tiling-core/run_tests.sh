#!/bin/sh
# Compile the tiling core and its JUnit 4 tests with Debian's kotlinc (one call) and run them on the shared vectors.
# Prints `N passed, N failed`; exit status 0 only when every test passed. Needs: kotlin, junit4, libandroid-json-java
# (apt-get install -y --no-install-recommends kotlin junit4 libandroid-json-java; `make test-apps` does it).
set -eu
here=$(cd "$(dirname "$0")" && pwd)
J=${JAVA_LIBS:-/usr/share/java}
out=${BUILD_DIR:-${TMPDIR:-/tmp}/nsr-edge-tiling-core}
mkdir -p "$out"
cp="$J/com.android.json.jar:$J/junit4.jar:$J/hamcrest-core.jar"
kotlinc "$here/src/main/kotlin" "$here/src/test/kotlin" -cp "$cp" -d "$out/tiling-core-tests.jar" 2>&1 \
  | grep -v -e '^warning: unable to find kotlin-stdlib' -e 'Options -Xverify:none' -e "is deprecated. This member is not fully supported" || true
test -f "$out/tiling-core-tests.jar"
java -Dnsredge.testdata="$here/../testdata" -cp "$out/tiling-core-tests.jar:$cp:$J/kotlin-stdlib.jar" nsredge.core.TestMainKt
