import { defineCases } from './fixtures.js';
export const grantCases = defineCases([]);
