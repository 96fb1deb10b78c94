"""``python -m services.tenants``: the tenant clusters' job trackers."""

from services.tenants.bootstrap import build
from shared.service_main import main

if __name__ == "__main__":
    main(build)
