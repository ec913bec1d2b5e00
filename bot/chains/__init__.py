"""Group-buy chains (团购接龙): clerks open them by command, members join on a mobile page."""
