from pipeline.cli import run
from pipeline.kdcache.build import main

run(main)
