"""The page-sharing daemon: finds duplicate guest pages and has hosts share them
copy-on-write, gives readers private copies when sharing costs them, and forks VMs from
templates."""
