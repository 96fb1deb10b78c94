"""``python -m services.hosts``: run N emulated hosts against the bus in VPLANE_BUS_URL."""

from services.hosts.bootstrap import build
from shared.service_main import main

if __name__ == "__main__":
    main(build)
