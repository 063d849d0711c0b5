import { defineCases } from './fixtures.js';
export const analyticsCases = defineCases([]);
