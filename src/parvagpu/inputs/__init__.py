"""Reading what the user gives: profile CSVs, SLO scenarios and services files, checked strictly."""
