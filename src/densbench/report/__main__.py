"""`python -m densbench.report DIR`: the report of a sweep directory (densbench.report.sweep)."""

from densbench.report.sweep import main

if __name__ == "__main__":
    main()
