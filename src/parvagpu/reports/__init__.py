"""What people read: plan tables, the strategy comparison and its figures."""
