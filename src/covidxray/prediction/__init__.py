"""covidxray.prediction"""
