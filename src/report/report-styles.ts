/**
 * A small stylesheet for the report's markup (every class starts with `bb-`). Serve it
 * (or inline it in a `<style>` element) once per page; theme it through the custom
 * properties on `.bb-report`, or write your own: the markup has no inline styles.
 *
 * @example
 * ```ts
 * res.end(`<style>${REPORT_STYLES}</style>${renderBalanceCard(summary)}`);
 * ```
 */
export const REPORT_STYLES = `
.bb-report{--bb-fg:#1f2933;--bb-muted:#5f6b7a;--bb-border:#e3e8ee;--bb-surface:#fff;--bb-accent:#4e79a7;--bb-danger:#b42318;--bb-danger-bg:#fef3f2;--bb-warn:#93370d;--bb-warn-bg:#fffaeb;color:var(--bb-fg);background:var(--bb-surface);border:1px solid var(--bb-border);border-radius:12px;padding:20px 24px;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;box-sizing:border-box}
.bb-report *{box-sizing:inherit}
.bb-title{font-size:18px;font-weight:600;margin:0 0 2px}
.bb-subtitle{color:var(--bb-muted);margin:0 0 16px}
.bb-subtitle code{font-size:13px;background:#f3f5f8;border-radius:4px;padding:1px 5px}
.bb-big{margin:0 0 10px;color:var(--bb-muted)}
.bb-big-value{font-size:36px;font-weight:650;color:var(--bb-fg);letter-spacing:-.02em;margin-right:4px;font-variant-numeric:tabular-nums}
.bb-meter{margin:0 0 16px}
.bb-meter svg{display:block;width:100%;height:8px}
.bb-meter-track{fill:#edf0f4}
.bb-meter-fill{fill:var(--bb-accent)}
.bb-balance[data-state=low] .bb-meter-fill{fill:#dc6803}
.bb-balance[data-state=blocked] .bb-meter-fill{fill:var(--bb-danger)}
.bb-meter-text{color:var(--bb-muted);font-size:13px;margin:6px 0 0}
.bb-notice{border-radius:8px;padding:10px 14px;margin:0 0 16px}
.bb-notice-blocked{color:var(--bb-danger);background:var(--bb-danger-bg);border:1px solid #fecdca}
.bb-notice-low{color:var(--bb-warn);background:var(--bb-warn-bg);border:1px solid #fedf89}
.bb-fields{display:grid;grid-template-columns:repeat(auto-fill,minmax(170px,1fr));gap:12px 24px;margin:0 0 20px}
.bb-field dt{color:var(--bb-muted);font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.bb-field dd{margin:2px 0 0;font-weight:600;font-variant-numeric:tabular-nums}
.bb-table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
.bb-table caption{text-align:left;font-weight:600;padding:0 0 8px}
.bb-table th,.bb-table td{padding:6px 8px;border-bottom:1px solid var(--bb-border);text-align:left;white-space:nowrap}
.bb-table thead th{color:var(--bb-muted);font-weight:500;font-size:12px;text-transform:uppercase;letter-spacing:.04em}
.bb-table tbody th{font-weight:500}
.bb-table tfoot th,.bb-table tfoot td{font-weight:650;border-bottom:0}
.bb-table .bb-num{text-align:right}
.bb-table-wrap{overflow-x:auto;border:0;padding:0;border-radius:0}
.bb-chart{display:block;width:100%;height:auto;margin:0 0 8px}
.bb-chart text{font:11px system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;fill:var(--bb-muted)}
.bb-grid line{stroke:var(--bb-border);stroke-width:1}
.bb-grid line.bb-axis{stroke:#c5ccd6}
.bb-legend{list-style:none;display:flex;flex-wrap:wrap;gap:8px 20px;margin:0 0 12px;padding:0}
.bb-legend li{display:flex;align-items:center;gap:6px}
.bb-legend-key{font-weight:600}
.bb-legend-value{color:var(--bb-muted)}
.bb-swatch{flex:none}
.bb-data summary{cursor:pointer;color:var(--bb-accent);margin:4px 0 8px}
.bb-empty{color:var(--bb-muted);margin:0;padding:24px 0;text-align:center}
`.trim();
