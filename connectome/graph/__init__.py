"""The connectivity graph: segments as nodes (id, size, class, centroid), pre -> post edges with
synapse count and total cleft size; tables (CSV), GraphML, a summary and plots."""
