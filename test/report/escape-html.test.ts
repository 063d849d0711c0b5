import { describe, expect, it } from 'vitest';
import { escapeHtml } from '../../src/report/index.js';
import { HOSTILE } from './fixtures.js';

describe('escapeHtml', () => {
  it('escape - the five characters that end text or a quoted attribute', () => {
    expect(escapeHtml(`<a href="x" title='y'>&</a>`)).toBe('&lt;a href=&quot;x&quot; title=&#39;y&#39;&gt;&amp;&lt;/a&gt;');
  });

  it('escape - hostile names keep no markup character', () => {
    for (const name of HOSTILE) expect(escapeHtml(name)).not.toMatch(/[<>"']/);
  });

  it('escape - already escaped text is escaped again, so it shows as typed', () => {
    expect(escapeHtml('&amp;')).toBe('&amp;amp;');
  });

  it('escape - numbers become their decimal text', () => {
    expect(escapeHtml(1234)).toBe('1234');
  });
});
