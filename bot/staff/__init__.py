"""Staff turnover: clerks who leave WeCom or move between stores, their customers and groups
handed to a successor (issue 13, items 1, 2), and what only ops can fix told to ops (item 6)."""
