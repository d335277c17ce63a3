"""Container HEALTHCHECK: healthy once the service answers /ready with 200 (model loaded and warmed up).

Python rather than curl because the slim and CUDA runtime images ship no curl; the port follows AFRL_PORT.
"""

import os
import sys
import urllib.request

url = f"http://127.0.0.1:{os.environ.get('AFRL_PORT', '8000')}/ready"
try:
    # urlopen raises for any non-2xx answer, e.g. 503 while the model is still loading.
    with urllib.request.urlopen(url, timeout=4) as resp:
        sys.exit(0 if resp.status == 200 else 1)
except Exception as e:
    print(f"not ready: {url}: {e}", file=sys.stderr)
    sys.exit(1)
