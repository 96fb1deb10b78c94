"""``python -m services.scheduler``: scheduler-high or -low, as VPLANE_PRIORITY says."""

from services.scheduler.bootstrap import build
from shared.service_main import main

if __name__ == "__main__":
    main(build)
