"""``python -m services.contention``: the contention monitor."""

from services.contention.bootstrap import build
from shared.service_main import main

if __name__ == "__main__":
    main(build)
