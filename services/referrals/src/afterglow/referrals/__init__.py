"""afterglow.referrals: referral codes, attribution, fraud checks, double-sided rewards."""
