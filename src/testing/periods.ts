import { defineCases } from './fixtures.js';
export const periodCases = defineCases([]);
