"""``python -m services.sharing``: the page-sharing daemon."""

from services.sharing.bootstrap import build
from shared.service_main import main

if __name__ == "__main__":
    main(build)
