-- Analytics read models for BI tools: views in this schema over the `analytics` projection's
-- live tables, swapped with it on rebuilds (see projections/src/analytics.rs and the README).
CREATE SCHEMA analytics;
