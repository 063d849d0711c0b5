import { defineCases } from './fixtures.js';
export const concurrencyCases = defineCases([]);
