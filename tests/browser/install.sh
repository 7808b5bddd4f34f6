#!/bin/sh
# Install the headless browser the sample-page test drives (Debian's chromium and chromedriver).
# Run by `make test`; harmless when they are already there. Without root or apt-get it says
# so and exits 0: tests/test_samples_browser.py then skips, loudly, naming this script.
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != "0" ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "tests/browser/install.sh: chromium/chromedriver missing and cannot apt-get them (need root on Debian);" \
         "the browser test of the sample page will be skipped" >&2
    exit 0
fi
echo "tests/browser/install.sh: installing chromium and chromium-driver (Debian packages) for the browser test" >&2
apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null \
    || echo "tests/browser/install.sh: apt-get install chromium chromium-driver FAILED; the browser test will be skipped" >&2
exit 0
