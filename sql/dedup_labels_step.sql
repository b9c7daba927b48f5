-- Inputs: edges (r0, r1: undirected), labels (rid, label) for every node that has an edge.
-- Output: labels after one round of min-label propagation plus pointer jumping (label of my label).
-- Parameters: none. The caller repeats until no label changes (converges to the component minimum).
WITH neighbour AS (
    SELECT e.r0 AS rid, l.label FROM edges e JOIN labels l ON l.rid = e.r1
    UNION ALL
    SELECT e.r1 AS rid, l.label FROM edges e JOIN labels l ON l.rid = e.r0
    UNION ALL
    SELECT rid, label FROM labels
),
propagated AS (SELECT rid, min(label) AS label FROM neighbour GROUP BY rid)
SELECT p.rid, least(p.label, coalesce(j.label, p.label)) AS label
FROM propagated p LEFT JOIN propagated j ON j.rid = p.label
ORDER BY p.rid
