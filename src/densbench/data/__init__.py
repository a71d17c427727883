"""Data: synthetic problems with a known truth, real tables, the UCI layout, splits and the target map a family's support allows."""
