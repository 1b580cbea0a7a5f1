-- Who imported a payment-channel statement, and for which jurisdiction: a statement names no
-- region of its own, so it belongs to the importer's jurisdiction (a county office's county).
-- Statements imported before this migration have neither and are readable at province level only.
ALTER TABLE fd_statements ADD COLUMN imported_by text;
ALTER TABLE fd_statements ADD COLUMN importer_jurisdiction text;
