"""What happens to a row, one module per step in flow order: ingest (json_text) -> adapt -> validate -> render
(render_limits, text_fields) -> mask (presets) -> truncate. Encoding is in `pipeline.encoders`."""
