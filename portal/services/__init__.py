"""Every write and business rule of the portal core lives in these modules."""
